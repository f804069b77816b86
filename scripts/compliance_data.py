#!/usr/bin/env python3
"""Derives ccm's compliance data files from PyPI packages (the only registry reachable here).

  core/data/us_zip.tsv        ZIP code ranges -> US state and IANA zone   (PyPI zipcodes)
  core/data/nanp_regions.tsv  +1 area code -> US state / Canadian province (PyPI phonenumbers)

Usage (from the repository root):
  pip download --no-deps zipcodes==3.0.0 phonenumbers==9.0.43 -d /tmp/wheels
  (cd /tmp/wheels && for w in *.whl; do unzip -oq "$w"; done)
  PYTHONPATH=/tmp/wheels python3 scripts/compliance_data.py

The holidays listed in config/rules/*.yaml were printed with `--holidays` from PyPI holidays 0.109.
"""
import datetime
import sys

TODAY = datetime.date.today().isoformat()

STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA",
    "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD",
    "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS",
    "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH",
    "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY", "North Carolina": "NC",
    "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA",
    "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN",
    "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA", "Washington State": "WA",
    "Washington D.C.": "DC", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "Chicago, IL": "IL", "Los Angeles, CA": "CA", "New York, NY": "NY", "Palm Beach, FL": "FL",
    "Philadelphia, PA": "PA", "San Antonio, TX": "TX",
}
PROVINCES = {
    "Alberta": "AB", "British Columbia": "BC", "British Colombia": "BC", "Manitoba": "MB",
    "New Brunswick": "NB", "Newfoundland and Labrador": "NL", "Ontario": "ON", "Quebec": "QC",
    "Saskatchewan": "SK", "Montreal, QC": "QC", "Toronto, ON": "ON",
    "Nova Scotia/Prince Edward Island": "NS,PE", "Northwest Territories/Nunavut/Yukon": "NT,NU,YT",
}


def zips(out):
    import zipcodes

    rows = sorted(
        (z["zip_code"], z["state"], z["timezone"] or "")
        for z in zipcodes.list_all()
        if z["country"] == "US" and z["state"] and z["timezone"]
    )
    ranges = []
    for code, state, zone in rows:
        if ranges and ranges[-1][2:] == [state, zone]:
            ranges[-1][1] = code
        else:
            ranges.append([code, code, state, zone])
    out.write(
        "# US ZIP code ranges -> state and IANA time zone: first\tlast\tstate\tzone. A ZIP code\n"
        "# between first and last (inclusive) of a row is in that state and zone; one in no row is\n"
        "# unknown. Used by ccm_core::window (the callee's zone and jurisdiction).\n"
        f"# Source: the PyPI package zipcodes {zipcodes.__version__} (MIT; USPS-derived data, "
        f"{len(rows)} ZIP codes), extracted on {TODAY}.\n"
        "# Regenerate: scripts/compliance_data.py\n"
    )
    for first, last, state, zone in ranges:
        out.write(f"{first}\t{last}\t{state}\t{zone}\n")


def regions(out):
    import phonenumbers
    from phonenumbers.geodata import GEOCODE_DATA

    out.write(
        "# +1 area code (with the 1) -> the US states or Canadian provinces it serves, as\n"
        "# ISO 3166-2 codes, comma separated. Used by ccm_core::window (the callee's jurisdiction).\n"
        "# Source: libphonenumber's geocoding data (resources/geocoding/en/1.txt, Apache License\n"
        f"# 2.0) as shipped in the PyPI package phonenumbers {phonenumbers.__version__}, extracted on {TODAY}.\n"
        "# Regenerate: scripts/compliance_data.py\n"
    )
    for prefix in sorted(k for k in GEOCODE_DATA if k.startswith("1") and len(k) == 4):
        name = GEOCODE_DATA[prefix].get("en")
        region = phonenumbers.region_code_for_number(phonenumbers.parse("+" + prefix + "2345678"))
        if region == "US" and name in STATES:
            codes = ["US-" + STATES[name]]
        elif region == "CA" and name in PROVINCES:
            codes = ["CA-" + p for p in PROVINCES[name].split(",")]
        else:
            continue
        out.write(f"{prefix}\t{','.join(codes)}\n")


def print_holidays():
    import holidays

    print("# PyPI holidays", holidays.__version__)
    for subdiv in ["RI", "LA", "UT", "AL"]:
        for year in (2026, 2027):
            for day, name in sorted(holidays.US(subdiv=subdiv, years=year).items()):
                print(f"US-{subdiv}\t{day}\t{name}")


if __name__ == "__main__":
    if "--holidays" in sys.argv:
        print_holidays()
        sys.exit()
    with open("core/data/us_zip.tsv", "w") as f:
        zips(f)
    with open("core/data/nanp_regions.tsv", "w") as f:
        regions(f)
