"""Batch jobs: OpenAI Batch API input lines run through the server's own request handling, in-process
(`polyhead batch`, and POST /v1/batches on the server)."""
