"""`prorank-edge serve`: the HTTP reranking server (FastAPI on uvicorn) and its dynamic batcher."""
