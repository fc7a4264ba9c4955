"""The Ray Serve application: classification and content-based retrieval over HTTP. `app.build` composes the
deployments; `args` holds its typed arguments, `deployments` the Classifier and Retriever, `ingress` the FastAPI
routes, `inputs` upload parsing. Request and response models live in `bigearth.api`, shared with the client SDK."""
