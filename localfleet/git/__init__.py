"""The local fleet's git server: the repository a release fetches its commit from."""
