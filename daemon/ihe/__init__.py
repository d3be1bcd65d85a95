"""IHE PCD interfaces to the hospital: DEC, IPEC and ACM out over MLLP (journaled first,
store-and-forward), and the EHR simulator's counterpart parsing."""
