"""The systemd unit templates in this directory, shipped as package data (`jobpipe.units`) so that
`jobpipe install` finds them in a wheel install too; see jobpipe.install."""
