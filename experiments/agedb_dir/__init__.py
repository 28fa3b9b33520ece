"""AgeDB-DIR (paper Tables 1, 2, 5): a tfds builder written without TensorFlow and a grain input pipeline."""
