"""The Ray Serve application: classification and content-based retrieval over HTTP. `app.build` composes the
deployments; `args` holds its typed arguments, `deployments` the Classifier and Retriever, `ingress` the FastAPI
routes. Request and response models (`bigearth.api.schemas`) and upload parsing (`bigearth.api.uploads`) are shared
with the client SDK."""
