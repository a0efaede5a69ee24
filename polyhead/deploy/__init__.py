"""Scale-out over Ray Serve: engine replicas behind the FastAPI app and the request router that picks one.
Import-light: nothing here imports ray until a module that needs it is imported."""
