# A CPU-only container for a hosted demo (Hugging Face Spaces "Docker" SDK, or any Docker host); see "Host it"
# in the README. Everything is installed by the Makefile (`make setup`, the same pins as on a laptop); the
# built-in real models are dequantized at build time, one process each, so the first visitor does not wait for
# them (SmolLM2 ~20 s, Gemma 3 270M a few minutes and 1.1 GB of safetensors; `--build-arg
# PREBUILT_MODELS=default` leaves Gemma to its first use). Listens on 7860 (the Spaces convention).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
# Spaces run the container as user 1000: build and run as that user, in its home
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH
WORKDIR /home/user/app
COPY --chown=user . .

# Public mode: visitors pick built-in models only and never see a server path (analysis/hosting.py).
# PRUNESCOPE_ALLOWED_MODELS=/path/to/models.txt (one id per line) offers more; the cache holds the dequantized
# models (built below) and every result computed on demand.
ENV PRUNESCOPE_PUBLIC=1 \
    PRUNESCOPE_CACHE=/home/user/app/.cache/prunescope
# Threads: torch's CPU kernels use OMP_NUM_THREADS threads per computation (MKL's BLAS, MKL_NUM_THREADS). Set
# them to the host's vCPUs (Spaces' free cpu-basic has 2); concurrent sessions share those cores.
ENV OMP_NUM_THREADS=2 \
    MKL_NUM_THREADS=2
# Streamlit listens on every interface at 7860 (the Spaces convention: app_port in the Space's front matter)
ENV STREAMLIT_SERVER_PORT=7860 \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0

# Memory (no setting: a host's limit): the weights take about 0.6 GB (SmolLM2-135M, float32) and 1.1 GB
# (Gemma 3 270M); the process peaked at about 2 GB with the default model and 2.1 GB on every page of Gemma
# (2.6 GB on a first load, which dequantizes: done here, at build time). Both stay loaded once opened, shared
# by every session: give the container 4 GB or more (cpu-basic has 16 GB).
ARG PREBUILT_MODELS="default gemma3-270m"
RUN make setup && .venv/bin/python -m analysis models >/dev/null \
    && for m in $PREBUILT_MODELS; do \
         .venv/bin/python -c "import sys; from analysis.models import load_model; load_model(sys.argv[1], 'cpu')" "$m" \
         || exit 1; done
EXPOSE 7860
# Streamlit's own health endpoint (200 "ok" once the server runs); slim images have no curl, Python has urllib
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:7860/_stcore/health', timeout=4)"
CMD [".venv/bin/python", "-m", "streamlit", "run", "app/main.py"]
