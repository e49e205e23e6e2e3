#!/bin/sh
# mkcerts.sh DIR: a throwaway test PKI for the dnsfwd integration tests.
#
#   ca.pem ca.key            test CA (trusted by the tests via --ca-file)
#   server.pem server.key    dns.test (SAN DNS:dns.test), signed by ca
#   expired.pem expired.key  dns.test, signed by ca, validity in the past
#   other-ca.pem other-ca.key  an unrelated CA
#   untrusted.pem untrusted.key  dns.test signed by other-ca
#   pin.txt                  base64(SHA-256(DER SPKI)) of server.key
#   wrong-pin.txt            the same for untrusted.key (a valid, wrong pin)
#
# ECDSA P-256 everywhere.  Idempotent: does nothing when DIR/pin.txt
# (written last) exists.
set -eu
dir=${1:?usage: mkcerts.sh DIR}
mkdir -p "$dir"
cd "$dir"
[ -s pin.txt ] && exit 0

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() {	# ca NAME CN
	key "$1.key"
	openssl req -new -x509 -key "$1.key" -out "$1.pem" -days 3650 \
	    -subj "/CN=$2" -sha256 \
	    -addext basicConstraints=critical,CA:TRUE \
	    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}

cat > ext.cnf <<'EOT'
[srv]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:dns.test
EOT

leaf() {	# leaf NAME CANAME
	key "$1.key"
	openssl req -new -key "$1.key" -subj "/CN=dns.test" -out "$1.csr" 2>/dev/null
	openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" \
	    -CAcreateserial -days 3650 -sha256 \
	    -extfile ext.cnf -extensions srv -out "$1.pem" 2>/dev/null
}

ca ca "dnsfwd test CA"
ca other-ca "unrelated test CA"
leaf server ca
leaf untrusted other-ca

# Expired: OpenSSL 3.0's x509 has no -not_after, so use "openssl ca" with
# explicit dates in the past.
key expired.key
openssl req -new -key expired.key -subj "/CN=dns.test" -out expired.csr 2>/dev/null
rm -rf cadb && mkdir cadb && : > cadb/index.txt && echo 1000 > cadb/serial
cat > ca.cnf <<'EOT'
[ca]
default_ca = test
[test]
dir = cadb
database = cadb/index.txt
serial = cadb/serial
new_certs_dir = cadb
default_md = sha256
policy = anything
copy_extensions = none
unique_subject = no
[anything]
commonName = supplied
EOT
openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key \
    -startdate 20200101000000Z -enddate 20200201000000Z \
    -extfile ext.cnf -extensions srv -notext \
    -in expired.csr -out expired.pem 2>/dev/null

openssl pkey -in server.key -pubout -outform DER 2>/dev/null |
    openssl dgst -sha256 -binary | openssl base64 -A > pin.tmp
echo >> pin.tmp
openssl pkey -in untrusted.key -pubout -outform DER 2>/dev/null |
    openssl dgst -sha256 -binary | openssl base64 -A > wrong-pin.txt
echo >> wrong-pin.txt
mv pin.tmp pin.txt
rm -f ./*.csr ext.cnf ca.cnf ./*.srl
rm -rf cadb
