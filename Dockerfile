# A CPU-only container for a hosted demo (Hugging Face Spaces "Docker" SDK, or any Docker host).
# Everything is installed by the Makefile, as on a laptop; the built-in real models are dequantized at build
# time, one process each, so the first visitor does not wait for them (SmolLM2 ~20 s, Gemma 3 270M a few
# minutes and 1.1 GB of safetensors; `--build-arg PREBUILT_MODELS=default` leaves Gemma to its first use).
# Listens on 7860 (the Spaces convention).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 user
USER user
WORKDIR /home/user/app
COPY --chown=user . .
# public mode: visitors pick built-in models only and never see a server path (analysis/hosting.py)
ENV PRUNESCOPE_CACHE=/home/user/app/.cache/prunescope \
    PRUNESCOPE_PUBLIC=1 \
    STREAMLIT_SERVER_PORT=7860 \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0
ARG PREBUILT_MODELS="default gemma3-270m"
RUN make setup && .venv/bin/python -m analysis models >/dev/null \
    && for m in $PREBUILT_MODELS; do \
         .venv/bin/python -c "import sys; from analysis.models import load_model; load_model(sys.argv[1], 'cpu')" "$m" \
         || exit 1; done
EXPOSE 7860
CMD [".venv/bin/python", "-m", "streamlit", "run", "app/main.py"]
