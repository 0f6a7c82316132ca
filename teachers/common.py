"""What the teacher experiments share: CPU-sized backbone and schedule.

The project's machines are 2-core CPUs, so the registered teacher experiments
default to narrow ResNets on the world's 96x96 images and short schedules;
`configs/teachers/*_full.yaml` holds what a real user would start from.
"""
from must import configs

IMAGE_SIZE = 96
NUM_CLASSES = 11  # the world's category ids 0..10, 0 = background

small_resnet = configs.small_resnet
detection_generator = configs.detection_generator
norm_activation = configs.norm_activation
trainer = configs.trainer

RESTRICTIONS = ["task.train_data.is_training != None",
                "task.validation_data.is_training != None"]
