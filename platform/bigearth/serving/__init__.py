"""Classification and content-based retrieval over HTTP. `http.create_app` is the HTTP surface, a plain FastAPI
application over the interfaces of `interfaces` (a Classifier, a Retriever, the metrics), with no Ray; `local`
implements them in one process, and the Ray Serve application (`app.build`: `deployments`, `ingress`) adapts its
deployment handles to them. Request and response models (`bigearth.api.schemas`) and upload parsing
(`bigearth.api.uploads`) are shared with the client SDK."""
