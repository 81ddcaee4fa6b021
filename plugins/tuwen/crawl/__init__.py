"""Running a site's crawl, the sites file, image acceptance, OCR."""
