# The HTTP service for an exported model: onnxruntime, FastAPI and uvicorn from uv.lock; no torch.
#   docker build -t flowerpipe-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" flowerpipe-serve
# serves /models/model.onnx; put another file name after the image name to serve that one.
FROM python:3.11-slim

RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY flowerpipe ./flowerpipe
# the base install and the serve extra, at the locked versions (the dev group would add the pipeline)
RUN uv sync --frozen --no-dev --extra serve --no-editable --compile-bytecode \
    && rm -rf /root/.cache /app/flowerpipe \
    && useradd --system --no-create-home flowerpipe
ENV PATH="/app/.venv/bin:$PATH"

USER flowerpipe
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
ENTRYPOINT ["flowerpipe", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/models/model.onnx"]
