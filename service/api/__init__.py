"""The HTTP face of the service: thin routes over the numeric core, the codecs and the store."""
