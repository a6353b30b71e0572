"""Problems in every format dpost reads, and the embedded synthetic task the default config trains on."""
