"""The book's ``dataset`` package: :func:`dualnet.book.dataset.mnist.load_mnist`."""
