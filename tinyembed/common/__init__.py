"""The bottom layer every other layer may use: error types and the metrics registry."""
