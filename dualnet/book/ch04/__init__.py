"""Chapter 4's versions where they differ from the later chapters' (its sigmoid ``TwoLayerNet``)."""
