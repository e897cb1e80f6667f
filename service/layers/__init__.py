"""Layer specs: what clients send, how it is checked and resolved, and the Keras forms."""
