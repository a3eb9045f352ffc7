"""Operations: logs, metrics, the live stream, alert detectors and channels, search and
reports — what an operator needs to run the router without reading its code."""
