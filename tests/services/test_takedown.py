"""Takedowns: a taken-down URL's, domain's or image's samples vanish from the next release, the past
releases that held them are named (library, CLI and the analysts' query), and later crawls are caught."""

from __future__ import annotations

import json
import subprocess

import pytest
from sqlalchemy import create_engine, text

from tests.services.test_export import publish_then_supersede, seed
from tuwen.cli import main as cli
from tuwen.config import Settings
from tuwen.release.export import ReleaseParams, write_release
from tuwen.release.takedowns import TakedownError, add_takedown, normalize, releases_with_takedowns
from tuwen.release.trainer_formats import read_records
from tuwen.resources import Resources


def _release_ids(resources: Resources, name: str) -> set[str]:
    result = write_release(resources, ReleaseParams(name=name, include_images=False))
    manifest = json.loads((result.local_path / "manifest.json").read_text())
    return {r["id"] for r in read_records(result.local_path / manifest["data_files"]["all"])}


def _sample_of(engine, url_like: str) -> tuple[str, str, str]:
    with engine.connect() as conn:
        return conn.execute(text("""SELECT s.id, src.url, src.page_url FROM sample s
                                    JOIN image_source src ON src.image_id = s.image_id
                                    WHERE s.qc_status = 'passed' AND src.url LIKE :u ORDER BY s.id LIMIT 1"""),
                            {"u": url_like}).one()


def test_url_takedown_removes_samples_and_names_past_releases(settings: Settings, resources: Resources) -> None:
    seed(settings, 20, with_images=False)
    before = _release_ids(resources, "r-before")
    engine = create_engine(settings.database_url)
    sample_id, url, _ = _sample_of(engine, "%")
    assert sample_id in before

    result = add_takedown(resources.engine, "url", f"  {url} ", reason="owner request")
    assert (result.images, result.samples, result.releases) == (1, 1, ["r-before"])
    with engine.connect() as conn:
        image = conn.execute(text("SELECT i.status, i.taken_down_at, s.qc_status FROM sample s "
                                  "JOIN image i ON i.id = s.image_id WHERE s.id = :s"), {"s": sample_id}).one()
        assert image.status == "taken_down" and image.taken_down_at is not None and image.qc_status == "taken_down"
        assert conn.execute(text("SELECT reason FROM takedown")).scalar() == "owner request"

    after = _release_ids(resources, "r-after")
    assert after == before - {sample_id}
    hits = releases_with_takedowns(resources.engine)
    assert [(h.release, h.kind, h.value, h.samples) for h in hits] == [("r-before", "url", url, 1)]

    # Adding it again changes nothing; the analysts' view agrees.
    assert add_takedown(resources.engine, "url", url).images == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM takedown")).scalar() == 1
        rows = conn.execute(text("SELECT release, sample_id FROM v_takedown_items WHERE release IS NOT NULL"
                                 )).all()
    assert [tuple(r) for r in rows] == [("r-before", sample_id)]
    engine.dispose()


def test_domain_takedown_covers_subdomains_only(settings: Settings, resources: Resources) -> None:
    seed(settings, 20, with_images=False)
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        on_site = conn.execute(text("SELECT count(DISTINCT image_id) FROM image_source "
                                    "WHERE site = 'news.example.cn'")).scalar()
    assert add_takedown(resources.engine, "domain", "ews.example.cn").images == 0  # a suffix is not a subdomain
    # Image URLs are on img.news.example.cn, pages on www.news.example.cn: both are subdomains.
    result = add_takedown(resources.engine, "domain", "https://News.Example.cn/whatever")
    assert result.value == "news.example.cn" and result.images == on_site > 0
    ids = _release_ids(resources, "r")
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM sample s JOIN image_source src ON src.image_id = s.image_id "
                                 "WHERE src.site = 'news.example.cn' AND s.id = ANY(:ids)"),
                            {"ids": list(ids)}).scalar()
    assert left == 0 and ids

    # An image crawled later on the same domain is caught when the next release is written.
    with engine.begin() as conn:
        image_id = conn.execute(text("SELECT image_id FROM image_source WHERE site = 'shop.example.com.cn' "
                                     "LIMIT 1")).scalar()
        conn.execute(text("INSERT INTO image_source (image_id, crawl_run_id, site, url, page_url, outcome) "
                          "SELECT :i, crawl_run_id, 'news.example.cn', 'https://cdn.news.example.cn/x.jpg', "
                          "'https://cdn.news.example.cn/p.html', 'accepted' FROM image_source WHERE image_id = :i "
                          "LIMIT 1"), {"i": image_id})
        sample_id = conn.execute(text("SELECT id FROM sample WHERE image_id = :i"), {"i": image_id}).scalar()
    assert sample_id in ids
    assert sample_id not in _release_ids(resources, "r2")
    engine.dispose()


def test_image_hash_takedown_and_cli(settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    seed(settings, 10, with_images=False)
    _release_ids(resources, "shipped")
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        sha = conn.execute(text("SELECT i.sha256 FROM sample s JOIN image i ON i.id = s.image_id "
                                "WHERE s.qc_status = 'passed' ORDER BY s.id LIMIT 1")).scalar()
    engine.dispose()
    for key, value in {"TUWEN_DATABASE_URL": settings.database_url, "TUWEN_S3_ENDPOINT": settings.s3_endpoint,
                       "TUWEN_S3_BUCKET": settings.s3_bucket}.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["takedown", "add", "--image-sha256", sha.upper(), "--reason", "dmca"]) == 0
    assert "1 images, 1 samples taken down" in capsys.readouterr().out
    assert cli.main(["takedown", "releases"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("shipped\t") and f"image_sha256 {sha}" in out
    assert cli.main(["releases", "--image-sha256", sha]) == 0
    assert capsys.readouterr().out.startswith("shipped\tpublished\ttw-")
    assert cli.main(["takedown", "add", "--domain", "not a domain"]) == 2


def test_normalize_rejects_malformed_values() -> None:
    with pytest.raises(TakedownError):
        normalize("image_sha256", "abc")
    with pytest.raises(TakedownError):
        normalize("url", "/relative/path.jpg")
    with pytest.raises(TakedownError):
        normalize("domain", "localhost")
    with pytest.raises(TakedownError):
        normalize("person", "x")
    assert normalize("domain", "*.Example.COM.") == "example.com"


def test_takedown_impact_query_names_releases(settings: Settings, resources: Resources) -> None:
    seed(settings, 10, with_images=False)
    shipped = _release_ids(resources, "old")
    engine = create_engine(settings.database_url)
    _, _, page = _sample_of(engine, "%")
    with engine.connect() as conn:
        on_page = conn.execute(text("SELECT s.id FROM sample s JOIN image_source src ON src.image_id = s.image_id "
                                    "WHERE src.page_url = :p"), {"p": page}).scalars().all()
    engine.dispose()
    result = add_takedown(resources.engine, "url", page, reason="page removed")
    assert result.images == len(on_page) > 1  # a page URL takes down every image seen on the page
    out = subprocess.run(["psql", settings.database_url.replace("+psycopg2", ""), "-X", "-q", "-A", "-t",
                          "-F", "|", "-c", "SET ROLE tuwen_analyst", "-f", "sql/queries/11_takedown_impact.sql"],
                         capture_output=True, text=True, check=True).stdout
    [row] = [line.split("|") for line in out.splitlines() if line.strip()]
    assert row[1:4] == ["url", page, "page removed"]
    assert row[5:] == [str(len(on_page)), str(len(set(on_page) & shipped)), "old"]


def _image_seen_at(settings: Settings, url: str, page_url: str) -> tuple[int, str]:
    """A passed sample's image, also seen at `url` on `page_url` (stored as Scrapy stores them)."""
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        image_id, sample_id = conn.execute(text(
            "SELECT s.image_id, s.id FROM sample s WHERE s.qc_status = 'passed' ORDER BY s.id LIMIT 1")).one()
        conn.execute(text("INSERT INTO image_source (image_id, crawl_run_id, site, url, page_url, outcome) "
                          "SELECT :i, crawl_run_id, 'idn', :u, :p, 'accepted' FROM image_source WHERE image_id = :i "
                          "LIMIT 1"), {"i": image_id, "u": url, "p": page_url})
    engine.dispose()
    return image_id, sample_id


@pytest.mark.parametrize("spelling", [
    "HTTPS://XN--FSQU00A.CN/Img/%E5%9B%BE.jpg#top",  # scheme/host case, fragment
    "https://例子.cn/Img/图.jpg",  # the IDN host and raw UTF-8 path, as a person writes them
    "https://例子.cn.:443/Img/%e5%9b%be.jpg",  # trailing dot, default port, lower-case escapes
    "https://xn--fsqu00a.cn/%49mg/%E5%9B%BE.jpg",  # an unreserved character percent-encoded
])
def test_url_takedown_matches_every_spelling_of_the_stored_url(settings: Settings, resources: Resources,
                                                               spelling: str) -> None:
    seed(settings, 6, with_images=False)
    image_id, sample_id = _image_seen_at(settings, "https://xn--fsqu00a.cn/Img/%E5%9B%BE.jpg",
                                         "https://xn--fsqu00a.cn/gallery.html")
    result = add_takedown(resources.engine, "url", spelling)
    assert result.value == "https://xn--fsqu00a.cn/Img/%E5%9B%BE.jpg"
    assert (result.images, result.samples) == (1, 1)
    assert sample_id not in _release_ids(resources, "after")


def test_domain_takedown_of_an_idn_matches_the_punycode_host(settings: Settings, resources: Resources) -> None:
    seed(settings, 6, with_images=False)
    _, sample_id = _image_seen_at(settings, "https://img.xn--fsqu00a.cn./a.jpg", "https://www.xn--fsqu00a.cn/p.html")
    result = add_takedown(resources.engine, "domain", "例子.CN.")
    assert result.value == "xn--fsqu00a.cn" and result.images == 1
    assert sample_id not in _release_ids(resources, "after")


@pytest.mark.parametrize(("value", "message"), [
    ("", "empty"), ("   ", "empty"), ("com.cn", "public suffix"), ("cn", "domain name"), ("gov.cn", "public suffix"),
    ("https://com.cn/", "public suffix"), ("github.io", "public suffix"), ("xn--fiqs8s", "domain name"),
    ("exa mple.com", "domain name"), ("127.0.0.1", "domain name"),
])
def test_empty_and_public_suffix_domains_are_refused(value: str, message: str) -> None:
    with pytest.raises(TakedownError, match=message):
        normalize("domain", value)


def test_cli_refuses_an_empty_or_public_suffix_domain_with_a_message(settings: Settings, resources: Resources,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TUWEN_DATABASE_URL", settings.database_url)
    for value, message in (("", "empty domain"), ("com.cn", "public suffix")):
        assert cli.main(["takedown", "add", "--domain", value]) == 2
        assert message in capsys.readouterr().err
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM takedown")).scalar() == 0
    engine.dispose()


def test_a_superseded_release_that_shipped_an_item_is_named(settings: Settings, resources: Resources) -> None:
    first, sha = publish_then_supersede(settings, resources, "twice")
    result = add_takedown(resources.engine, "image_sha256", sha)
    assert result.releases == ["twice@v1"]  # only the first version held it
    assert [h.release for h in releases_with_takedowns(resources.engine)] == ["twice@v1"]


def test_releases_by_url_finds_any_spelling(settings: Settings, resources: Resources, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    seed(settings, 6, with_images=False)
    _, sample_id = _image_seen_at(settings, "https://xn--fsqu00a.cn/Img/%E5%9B%BE.jpg", "https://xn--fsqu00a.cn/g.html")
    assert sample_id in _release_ids(resources, "shipped")
    monkeypatch.setenv("TUWEN_DATABASE_URL", settings.database_url)
    capsys.readouterr()
    assert cli.main(["releases", "--url", "HTTPS://例子.CN./Img/图.jpg#x"]) == 0
    assert capsys.readouterr().out == f"shipped\tpublished\t{sample_id}\t" + _file_of(settings, sample_id)
    assert cli.main(["releases", "--url", "file:///etc/passwd"]) == 2
    assert "not an absolute http(s) URL" in capsys.readouterr().err


def _file_of(settings: Settings, sample_id: str) -> str:
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT file, position FROM export_item WHERE sample_id = :s"), {"s": sample_id}).one()
    engine.dispose()
    return f"{row.file}\t#{row.position}\n"
