CREATE OR REPLACE PACKAGE shipping_pkg AS
  PROCEDURE sync_shipping;
  FUNCTION count_shipping RETURN NUMBER;
END shipping_pkg;
