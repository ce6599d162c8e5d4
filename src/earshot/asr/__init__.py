"""Speech-to-text: engines, the streaming decode policy and scheduler, transcript export."""
