"""tuwen's Scrapy project: one generic spider (`site`) driven by the sites YAML, writing to S3 and Postgres."""
