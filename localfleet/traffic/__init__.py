"""Traffic Manager's DNS side for the local fleet: the DNS server, its answers, simulated users."""
