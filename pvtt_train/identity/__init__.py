"""Product identity: a tiny embedding network, product crops, the identity loss and its training."""
