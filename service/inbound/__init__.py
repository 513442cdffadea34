"""What comes back from mailbox providers: feedback-loop complaints today."""
