/* The stress programs' certificate: self-signed, made in memory. Header only. */
#ifndef STRESS_PKI_H
#define STRESS_PKI_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stress_common.h"

/* A self-signed P-256 certificate and its key, as PEM (no files). */
static void make_cert(char **cert, size_t *cert_len, char **key, size_t *key_len)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    BIO *cb = BIO_new(BIO_s_mem()), *kb = BIO_new(BIO_s_mem());
    char *p;
    long n;
    CHECK(pkey != NULL && x != NULL && cb != NULL && kb != NULL);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"stress", -1, -1, 0);
    X509_set_issuer_name(x, name);
    CHECK(X509_sign(x, pkey, EVP_sha256()) > 0);
    CHECK(PEM_write_bio_X509(cb, x) == 1 && PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL) == 1);
    n = BIO_get_mem_data(cb, &p);
    *cert = malloc((size_t)n);
    memcpy(*cert, p, (size_t)n);
    *cert_len = (size_t)n;
    n = BIO_get_mem_data(kb, &p);
    *key = malloc((size_t)n);
    memcpy(*key, p, (size_t)n);
    *key_len = (size_t)n;
    BIO_free(cb);
    BIO_free(kb);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

#endif
