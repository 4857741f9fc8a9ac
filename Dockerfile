# The SomaBrain node (core dependencies; the MiniLM extra is not installed: see the README).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY somabrain ./somabrain
COPY policies ./policies
# Editable, so that the node finds policies/ beside the package, as in a checkout.
RUN pip install --no-cache-dir -e . && useradd --create-home soma && mkdir /data && chown soma /data
ENV SOMA_GOVERNANCE__POLICIES_DIR=/app/policies
USER soma
VOLUME ["/data"]
EXPOSE 9696
ENTRYPOINT ["somabrain"]
CMD ["dev", "--host", "0.0.0.0", "--port", "9696", "--data-dir", "/data"]
