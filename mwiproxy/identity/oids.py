"""Object identifiers used to carry an identity in an X.509 subject.

The route-to-database, generation, renewable and bot OIDs are Teleport's (see
teleport-facts.md §4), so certificates read the same to tools that know Teleport's.
"""

from __future__ import annotations

from cryptography.x509.oid import NameOID, ObjectIdentifier

# Standard attributes that Teleport reuses for identity fields.
USER = NameOID.COMMON_NAME
ROLES = NameOID.ORGANIZATION_NAME
USAGE = NameOID.ORGANIZATIONAL_UNIT_NAME
PRINCIPALS = NameOID.LOCALITY_NAME
ROUTE_TO_CLUSTER = NameOID.STREET_ADDRESS
TRAITS = NameOID.POSTAL_CODE

# Teleport's private arc.
RENEWABLE = ObjectIdentifier("1.3.9999.1.13")
GENERATION = ObjectIdentifier("1.3.9999.1.14")
DB_SERVICE = ObjectIdentifier("1.3.9999.2.1")
DB_PROTOCOL = ObjectIdentifier("1.3.9999.2.2")
DB_USERNAME = ObjectIdentifier("1.3.9999.2.3")
DB_NAME = ObjectIdentifier("1.3.9999.2.4")
BOT_NAME = ObjectIdentifier("1.3.9999.2.18")
BOT_INSTANCE_ID = ObjectIdentifier("1.3.9999.2.20")

# Usage values carried in OU.
USAGE_ADMIN = "mwi:admin"
USAGE_BOT = "mwi:bot"
USAGE_AGENT = "mwi:agent"  # a database agent (`mwiproxy start --roles=db`)
USAGE_PROXY = "mwi:proxy"  # a cluster proxy dialing agents
USAGE_DATABASE = "usage:db"
