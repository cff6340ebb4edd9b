"""Storage behind one interface (`interface.Store`): SQL and in-memory job stores, and blobs.

Nothing here imports the job layer; both share the records of `modelplex.records`.
"""
