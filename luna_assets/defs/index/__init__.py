"""The `index` domain (group `index`): the FAISS index, the job that rebuilds it and its nightly
schedule."""
