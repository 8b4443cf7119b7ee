"""The worker side: `ScriptWorker` answers step envelopes from its sandbox pool for every transport's server;
`WorkerServer` is what the WebSocket and HTTP servers share (token, TLS, `Admission`, `Limits`, /health)."""
