# The kernelenv server, as OpenEnv's Docker convention expects: port 8000, a health check.
#   docker build -t kernelenv .
#   docker run -p 8000:8000 kernelenv          (or CodingEnv.from_docker_image("kernelenv"))
FROM python:3.11-slim

# procps: kernel process management; bubblewrap: the strongest kernel sandbox level
# (used when the container may create namespaces, else the server falls back and says so).
RUN apt-get update \
    && apt-get install -y --no-install-recommends procps bubblewrap \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 kernelenv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kernelenv ./kernelenv
COPY tasks ./tasks
RUN pip install --no-cache-dir .

USER kernelenv
ENV KERNELENV_HOST=0.0.0.0 \
    KERNELENV_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"

CMD ["kernelenv", "serve"]
