"""The HTTP API's contract, shared by the server (`bigearth.serving`) and the client SDK (`bigearth.client`) with no
Serve import: request and response models (`schemas`) and upload parsing (`uploads`)."""
