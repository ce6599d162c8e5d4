"""The processors that ship with earshot: level, spectrogram, VAD, speech-to-text."""
