# A CPU-only container for a hosted demo (Hugging Face Spaces "Docker" SDK, or any Docker host).
# Everything is installed by the Makefile, as on a laptop; the default model is dequantized at build time
# so the first visitor does not wait for it. Listens on 7860 (the Spaces convention).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 user
USER user
WORKDIR /home/user/app
COPY --chown=user . .
ENV PRUNESCOPE_CACHE=/home/user/app/.cache/prunescope \
    STREAMLIT_SERVER_PORT=7860 \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0
RUN make setup && .venv/bin/python -m analysis models >/dev/null \
    && .venv/bin/python -c "from analysis.models import load_model; load_model('default')"
EXPOSE 7860
CMD [".venv/bin/python", "-m", "streamlit", "run", "app/main.py"]
