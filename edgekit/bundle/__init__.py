"""Reading bundles back: sections, tensors, dtypes (inspect), and the manifest record."""
