"""Where the shared configuration lives and the named QoS profiles it defines."""
