"""Wire codecs for tensors: ``.npy`` bodies (``npy``) and tensors inside JSON (``json_tensor``)."""
