"""The multi-task student: a shared ResNet-FPN with one head per task.

Importing the package registers the `StudentTask` with Model Garden's task
factory and the `must_student` experiment with its experiment factory.
"""
from must.student import config
from must.student import task
