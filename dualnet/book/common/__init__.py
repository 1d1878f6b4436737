"""The book's ``common`` package: layers, functions, gradient, optimizer, trainer, util and the
multi-layer networks, each in the module of the book's name."""
