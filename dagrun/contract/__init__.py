"""The values every part of dagrun shares: step and run states, context operations, step requests and
results, the Executor and Transport protocols, and the wire envelope. Nothing heavy: no engine, store,
sandbox or transport is imported from here."""
