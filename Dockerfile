# A custom Dataflow worker: Beam's own Python 3.11 SDK image of the pinned Beam,
# with the locked stack (requirements.lock, hashes checked) and this package
# installed, so workers start without installing anything.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/must-worker:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/must-worker:0.1.0
#
# then give a Beam binary --sdk_container_image=that --sdk_location=container
# (README, "Scaling out"). GPU workers: --build-arg TF_EXTRA=and-cuda adds
# TensorFlow's CUDA libraries (the NVIDIA pip wheels; not in the lock, so not
# hash-checked); Dataflow installs the driver (install-nvidia-driver).
FROM apache/beam_python3.11_sdk:2.77.0

ARG TF_EXTRA=""
WORKDIR /opt/must
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock \
 && if [ -n "$TF_EXTRA" ]; then pip install --no-cache-dir "tensorflow[$TF_EXTRA]==2.20.0"; fi
COPY pyproject.toml setup.py ./
COPY must ./must
COPY teachers ./teachers
COPY beam_pipelines ./beam_pipelines
RUN pip install --no-cache-dir --no-deps . \
 && cd / && python -c "import beam_pipelines.pseudo_label, apache_beam.io.gcp.gcsfilesystem"
# The image's entrypoint stays Beam's worker boot (/opt/apache/beam/boot).
