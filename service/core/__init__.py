"""The numeric core: pure functions over numpy arrays, with no HTTP in them."""
