"""Storage behind one interface: the job store (jobs, webhook deliveries, batches) and blobs."""
