"""The worker side: `ScriptWorker` runs step envelopes in its sandbox pool for every transport's server;
the lobby holds connections until they authenticate."""
