"""The gateways alert messages go out through (Signal: channels.signal)."""
