"""What only development, tests and demos need: the stand-in VLM, the fixture site, the local S3
server, the service manager, local Airflow, the demo. No stage imports this package."""
