"""What both APIs share over HTTP: error bodies, request ids, request metrics, serving."""
