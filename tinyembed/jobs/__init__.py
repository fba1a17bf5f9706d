"""Durable work beside the server: the Files and Batches API and the bulk `tinyembed embed`."""
