"""The Ray Serve application: classification and content-based retrieval over HTTP (`app.build`), upload parsing
(`inputs`). Request and response models live in `bigearth.api`, shared with the client SDK."""
